-- one row per mask run: the score that ranked its heads (an attention score, 'attribution' for an attribution run's
-- causal importance, 'imported' for an imported ranking) and the run the ranking came from
select distinct run_id, ranking_run_id, ranking_score
from stg_mask_conditions
where ranking_score is not null
