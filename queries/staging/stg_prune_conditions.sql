-- one row per prune run and condition: the budgets' allocation, the share of image KV kept, how keys are
-- chosen, when they are dropped (phase: cache, after the prefill; prefill, in it too; runs written before
-- phases existed are prefill), the ranking the score allocation followed, and the kept share per (layer,
-- KV head), row-major (the prune kind's settings, typed)
select
    run_id,
    model,
    benchmark,
    condition_id,
    settings ->> 'allocation' as allocation,
    cast(settings ->> 'kv_share' as float) as kv_share,
    settings ->> 'keep' as keep,
    coalesce(settings ->> 'phase', 'prefill') as phase,
    cast(settings ->> 'floor' as float) as floor,
    cast(settings ->> 'seed' as integer) as seed,
    ranking_run_id,
    ranking_score,
    cast(settings -> 'kept_shares' as float[]) as kept_shares
from stg_sweep_conditions
where kind = 'prune'
