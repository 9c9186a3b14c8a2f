-- The former stored table prune_results, in its shape, over old and new parts (stg_sweep_results): for queries
-- written before sweeps shared one table
select * exclude (model, benchmark, kind)
from stg_sweep_results
where kind = 'prune'
