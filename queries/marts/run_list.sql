-- one row per run, oldest first: what `attnwh runs` lists
select run_id, kind, model, benchmark, n_samples, parts_committed, n_parts, complete, dtype, created
from stg_runs
order by created, run_id
