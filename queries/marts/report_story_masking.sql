-- For each mask run, mode and stage: the unmasked baseline and, at the most heads the run masked by rank, the
-- accuracy when masking the top heads, random heads (mean over seeds, with the seeds' lowest and highest) and
-- the bottom heads, with 95% Wilson intervals (masking_curves'), for the report's front-page sentences.
with curves as (
    select * from masking_curves
),
largest as (
    select run_id, mode, stage, max(k) as k
    from curves
    where strategy = 'top'
    group by run_id, mode, stage
),
baseline as (
    select run_id, mode, accuracy, ci_low, ci_high
    from curves
    where strategy = 'none'
),
at_k as (
    select c.*
    from curves as c
    join largest as l using (run_id, mode, stage, k)
),
final as (
    select
        a.model,
        a.benchmark,
        a.run_id,
        a.mode,
        a.stage,
        a.k,
        avg(a.fraction) as fraction,
        any_value(b.accuracy) as baseline_accuracy,
        any_value(b.ci_low) as baseline_ci_low,
        any_value(b.ci_high) as baseline_ci_high,
        max(a.accuracy) filter (where a.strategy = 'top') as top_accuracy,
        max(a.ci_low) filter (where a.strategy = 'top') as top_ci_low,
        max(a.ci_high) filter (where a.strategy = 'top') as top_ci_high,
        max(a.accuracy) filter (where a.strategy = 'random') as random_accuracy,
        max(a.accuracy_min) filter (where a.strategy = 'random') as random_accuracy_min,
        max(a.accuracy_max) filter (where a.strategy = 'random') as random_accuracy_max,
        max(a.n_conditions) filter (where a.strategy = 'random') as random_seeds,
        max(a.accuracy) filter (where a.strategy = 'bottom') as bottom_accuracy,
        max(a.ci_low) filter (where a.strategy = 'bottom') as bottom_ci_low,
        max(a.ci_high) filter (where a.strategy = 'bottom') as bottom_ci_high
    from at_k as a
    join baseline as b using (run_id, mode)
    group by a.model, a.benchmark, a.run_id, a.mode, a.stage, a.k
)
select f.*, r.ranking_score
from final as f
left join stg_mask_rankings as r using (run_id)
order by f.benchmark, f.model, f.run_id, f.mode, f.stage
