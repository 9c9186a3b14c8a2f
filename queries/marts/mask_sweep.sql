-- one row per condition of one mask run, for reading at a terminal: accuracy with its 95% Wilson
-- interval, the paired difference to the unmasked baseline and the exact McNemar p-value (rounded)
select
    strategy,
    stage,
    k,
    round(fraction, 3) as fraction,
    seed,
    n,
    round(columns(['accuracy', 'ci_low', 'ci_high', 'delta', 'changed']), 3),
    correct_to_wrong,
    wrong_to_right,
    mcnemar_p
from masking_accuracy
where run_id = $run_id
order by condition_id
