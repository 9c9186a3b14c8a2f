-- The former stored table prune_conditions, in its shape, over old and new parts (stg_prune_conditions): for
-- queries written before sweeps shared one table
select * exclude (model, benchmark)
from stg_prune_conditions
