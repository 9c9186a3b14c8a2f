-- one row per mask run and condition: what was masked, and how the heads were ranked (the mask kind's settings, typed)
select
    run_id,
    model,
    benchmark,
    condition_id,
    settings ->> 'strategy' as strategy,
    settings ->> 'stage' as stage,
    cast(settings ->> 'k' as integer) as k,
    cast(settings ->> 'fraction' as float) as fraction,
    cast(settings ->> 'seed' as integer) as seed,
    settings ->> 'mode' as mode,
    ranking_run_id,
    ranking_score,
    heads
from stg_sweep_conditions
where kind = 'mask'
