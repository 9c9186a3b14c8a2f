-- Every masking condition with its interval, paired difference and McNemar p-value, for the report's table; the mask
-- run and the score that ranked its heads name the rows of runs ranked otherwise.
select a.run_id, a.model, a.benchmark, r.ranking_score, a.mode, a.strategy, a.stage, a.k, a.seed, a.n, round(a.accuracy, 3) as accuracy,
       round(a.ci_low, 3) as ci_low, round(a.ci_high, 3) as ci_high, round(a.delta, 3) as delta, a.mcnemar_p
from masking_accuracy as a
left join stg_mask_rankings as r using (run_id)
order by a.model, a.benchmark, a.run_id, a.condition_id
