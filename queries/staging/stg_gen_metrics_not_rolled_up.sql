-- the gen_metrics rows of runs whose gen_scores / gen_head_scores rollups were built from other definitions (or
-- from several versions): stg_gen_scores and stg_gen_head_scores recompute their sums with the current definitions.
-- A filter on the scan itself, so that when every run is current (the usual case) no gen_metrics row is read.
select m.*
from gen_metrics as m
where m.run_id in (
    select run_id
    from (select run_id, definitions from gen_scores union all select run_id, definitions from gen_head_scores)
    group by run_id
    having bool_or(definitions is distinct from definitions_version())
)
