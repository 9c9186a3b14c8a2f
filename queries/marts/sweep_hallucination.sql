-- one row per condition of one sweep run on a benchmark with object annotations, for reading at a terminal (what
-- attnwh mask / prune print for such a benchmark): AMBER's metrics and their change against the baseline (rounded)
select
    condition_id,
    settings,
    n_answers,
    round(columns(['chair', 'cover', 'hal', 'cog', 'chair_delta', 'cover_delta', 'hal_delta']), 3)
from object_hallucination
where run_id = $run_id and condition_id is not null
order by condition_id
