-- The former stored table mask_conditions, in its shape, over old and new parts (stg_mask_conditions): for
-- queries written before sweeps shared one table
select run_id, condition_id, strategy, stage, k, fraction, seed, mode, ranking_run_id, ranking_score as ranking_metric, heads
from stg_mask_conditions
