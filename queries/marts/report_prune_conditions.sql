-- Every pruning condition of every prune run (the run named in run_id) with its interval, paired difference, answer
-- stability and KV saved, for the report's table.
select run_id, model, benchmark, allocation, kv_share, keep, phase, seed, n, round(accuracy, 3) as accuracy,
       round(ci_low, 3) as ci_low, round(ci_high, 3) as ci_high, round(delta, 3) as delta, round(changed, 3) as changed,
       correct_to_wrong, wrong_to_right, mcnemar_p, round(kv_saving, 3) as kv_saving
from pruning_accuracy
order by model, benchmark, run_id, condition_id
