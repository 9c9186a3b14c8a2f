-- Accuracy as heads are masked, for every model and benchmark with a mask run ranked by an attribution run: the
-- top heads by attribution, by attention (mask runs ranked by a head score) and random heads (outside each run's
-- top k), each line starting at its run's unmasked baseline
with curves as (
    select c.*, r.ranking_score
    from masking_curves as c
    join stg_mask_rankings as r using (run_id)
),
compared as (
    select distinct model, benchmark from curves where ranking_score = 'attribution'
),
labelled as (
    select
        c.*,
        case
            when c.strategy = 'top' and c.ranking_score = 'attribution' then 'top by attribution'
            when c.strategy = 'top' then 'top by attention'
            when c.ranking_score = 'attribution' then 'random (outside attribution''s top k)'
            else 'random (outside attention''s top k)'
        end as ranking
    from curves as c
    join compared using (model, benchmark)
    where c.strategy in ('top', 'random')
),
lines as (
    select distinct run_id, stage, ranking from labelled
)
select model, benchmark, mode, stage, ranking, k, fraction, accuracy, ci_low, ci_high, n_conditions
from labelled
union all
select b.model, b.benchmark, b.mode, l.stage, l.ranking, b.k, b.fraction, b.accuracy, b.ci_low, b.ci_high, b.n_conditions
from curves as b
join lines as l using (run_id)
where b.strategy = 'none'
order by model, benchmark, stage, ranking, k
