-- one row per condition of one prune run, for reading at a terminal: accuracy with its 95% Wilson interval,
-- the paired difference to the full cache, answer stability, the exact McNemar p-value and the KV saved (rounded)
select
    allocation,
    kv_share,
    keep,
    seed,
    n,
    round(accuracy, 3) as accuracy,
    round(ci_low, 3) as ci_low,
    round(ci_high, 3) as ci_high,
    round(delta, 3) as delta,
    round(changed, 3) as changed,
    correct_to_wrong,
    wrong_to_right,
    mcnemar_p,
    round(image_kv_kept, 3) as image_kv_kept,
    round(kv_saving, 3) as kv_saving
from pruning_accuracy
where run_id = $run_id
order by condition_id
