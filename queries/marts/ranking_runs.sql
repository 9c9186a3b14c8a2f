-- one row per complete extraction run of a model (at one revision) on a benchmark with head scores for $query,
-- newest first: the runs `attnwh mask` may rank heads by (the first, unless --ranking-run names another)
select run_id, created
from stg_runs
where kind = 'extract'
    and complete
    and model = $model
    and benchmark = $benchmark
    and json_extract_string(spec, '$.model_revision') = $model_revision
    and run_id in (select run_id from stg_head_scores where query = $query)
order by created desc, run_id
