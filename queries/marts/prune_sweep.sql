-- one row per condition of one prune run, for reading at a terminal: accuracy with its 95% Wilson interval,
-- the paired difference to the full cache, answer stability, the exact McNemar p-value and the KV saved (rounded)
select
    allocation,
    kv_share,
    keep,
    phase,
    seed,
    n,
    round(columns(['accuracy', 'ci_low', 'ci_high', 'delta', 'changed']), 3),
    correct_to_wrong,
    wrong_to_right,
    mcnemar_p,
    round(columns(['image_kv_kept', 'kv_saving']), 3)
from pruning_accuracy
where run_id = $run_id
order by condition_id
