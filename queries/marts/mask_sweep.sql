-- one row per condition of one mask run, for reading at a terminal: accuracy with its 95% Wilson
-- interval, the paired difference to the unmasked baseline and the exact McNemar p-value (rounded)
select
    strategy,
    stage,
    k,
    round(fraction, 3) as fraction,
    seed,
    n,
    round(accuracy, 3) as accuracy,
    round(ci_low, 3) as ci_low,
    round(ci_high, 3) as ci_high,
    round(delta, 3) as delta,
    round(changed, 3) as changed,
    correct_to_wrong,
    wrong_to_right,
    mcnemar_p
from masking_accuracy
where run_id = $run_id
order by condition_id
