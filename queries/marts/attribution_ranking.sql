-- one row per head of an attribution run (attnwh attribute), best first: its causal importance (the drop of
-- the target when the head is ablated), the uncertainty, the stage, and its rank (stg_head_attributions')
select
    run_id,
    layer,
    head,
    stage,
    score,
    std_error,
    ci_low,
    ci_high,
    method,
    n_layers,
    n_heads,
    n_kv_heads,
    rank
from stg_head_attributions
where run_id = $run_id
order by rank
