-- For each mask run, mode and stage: the unmasked baseline and, at one k the run masked by rank, the accuracy
-- when masking the top heads, random heads (mean over seeds, with the seeds' lowest and highest) and the bottom
-- heads, with 95% Wilson intervals (masking_curves'), for the report's front-page sentences. The k: the largest at
-- which the bottom heads are not the top heads (at every head of a stage they are the same heads, so "top" and
-- "bottom" would be two names of one condition), preferring one with a random control; only where every k is the
-- whole stage is that k told, as every head of the stage, without a bottom.
with curves as (
    select * from masking_curves
),
ranked_heads as (
    select run_id, mode, stage, k, strategy, list_sort(heads) as heads
    from stg_mask_conditions
    where strategy in ('top', 'bottom')
),
whole_stage as (
    select distinct t.run_id, t.mode, t.stage, t.k
    from ranked_heads as t
    join ranked_heads as b using (run_id, mode, stage, k)
    where t.strategy = 'top' and b.strategy = 'bottom' and len(t.heads) > 0 and t.heads = b.heads
),
with_random as (
    select distinct run_id, mode, stage, k
    from curves
    where strategy = 'random'
),
candidates as (
    select
        c.run_id,
        c.mode,
        c.stage,
        c.k,
        w.k is not null as whole,
        r.k is not null as has_random,
        row_number() over (partition by c.run_id, c.mode, c.stage order by (w.k is not null), (r.k is not null) desc, c.k desc) as choice
    from curves as c
    left join whole_stage as w using (run_id, mode, stage, k)
    left join with_random as r using (run_id, mode, stage, k)
    where c.strategy = 'top'
),
chosen as (
    select run_id, mode, stage, k, whole
    from candidates
    where choice = 1
),
baseline as (
    select run_id, mode, accuracy, ci_low, ci_high
    from curves
    where strategy = 'none'
),
at_k as (
    select c.*, l.whole
    from curves as c
    join chosen as l using (run_id, mode, stage, k)
),
final as (
    select
        a.model,
        a.benchmark,
        a.run_id,
        a.mode,
        a.stage,
        a.k,
        any_value(a.whole) as whole_stage,
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
        max(a.accuracy) filter (where a.strategy = 'bottom' and not a.whole) as bottom_accuracy,
        max(a.ci_low) filter (where a.strategy = 'bottom' and not a.whole) as bottom_ci_low,
        max(a.ci_high) filter (where a.strategy = 'bottom' and not a.whole) as bottom_ci_high
    from at_k as a
    join baseline as b using (run_id, mode)
    group by a.model, a.benchmark, a.run_id, a.mode, a.stage, a.k
)
select
    f.*,
    s.complete,
    s.parts_committed,
    s.n_parts,
    r.ranking_score
from final as f
left join stg_runs as s using (run_id)
left join stg_mask_rankings as r using (run_id)
order by f.benchmark, f.model, f.run_id, f.mode, f.stage
