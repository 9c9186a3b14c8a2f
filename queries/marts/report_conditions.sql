-- Every masking condition with its interval, paired difference and McNemar p-value, for the report's table.
select model, benchmark, mode, strategy, stage, k, seed, n, round(accuracy, 3) as accuracy,
       round(ci_low, 3) as ci_low, round(ci_high, 3) as ci_high, round(delta, 3) as delta, mcnemar_p
from masking_accuracy
order by model, benchmark, condition_id
