-- one row per mask run, strategy, stage and k: accuracy against the share of heads masked
-- (random: mean over seeds, interval from the lowest to the highest per-seed Wilson bound)
select
    run_id,
    model,
    benchmark,
    mode,
    strategy,
    stage,
    k,
    avg(fraction) as fraction,
    count(*) as n_conditions,
    avg(accuracy) as accuracy,
    min(accuracy) as accuracy_min,
    max(accuracy) as accuracy_max,
    min(ci_low) as ci_low,
    max(ci_high) as ci_high,
    avg(delta) as delta
from masking_accuracy
group by run_id, model, benchmark, mode, strategy, stage, k
order by run_id, mode, strategy, stage, k
