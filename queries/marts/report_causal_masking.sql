-- Accuracy as heads are masked, for every model and benchmark with a mask run ranked by an attribution run: the
-- top heads by attribution, by an imported ranking and by attention (a head score), and random heads (outside that
-- run's top k), each line one run's (run_id) and starting at its unmasked baseline. Of the runs ranked by
-- attention, one per model, benchmark and mode: the one report_masking shows (the first by shown_order in
-- stg_runs); of those ranked by an attribution run or an imported ranking, one per ranking run and mode, likewise.
with curves as (
    select
        c.*,
        m.ranking_score,
        case when m.ranking_score in ('attribution', 'imported') then m.ranking_score else 'attention' end as ranked_by,
        case when m.ranking_score in ('attribution', 'imported') then m.ranking_run_id end as ranking_run_id
    from masking_curves as c
    join stg_mask_rankings as m using (run_id)
),
compared as (
    select distinct model, benchmark from curves where ranked_by = 'attribution'
),
shown as (
    select c.*
    from curves as c
    join compared using (model, benchmark)
    join stg_runs as r using (run_id)
    qualify r.shown_order = min(r.shown_order) over (partition by c.model, c.benchmark, c.mode, c.ranked_by, c.ranking_run_id)
),
labelled as (
    select
        s.*,
        case
            when s.strategy = 'top' and s.ranked_by = 'attribution' then 'top by attribution'
            when s.strategy = 'top' and s.ranked_by = 'imported' then 'top by imported ranking'
            when s.strategy = 'top' then 'top by attention'
            when s.ranked_by = 'attribution' then 'random (outside attribution''s top k)'
            when s.ranked_by = 'imported' then 'random (outside the imported ranking''s top k)'
            else 'random (outside attention''s top k)'
        end as ranking
    from shown as s
    where s.strategy in ('top', 'random')
),
lines as (
    select distinct run_id, mode, stage, ranking from labelled
)
select run_id, ranking_score, model, benchmark, mode, stage, ranking, k, fraction, accuracy, ci_low, ci_high, n_conditions
from labelled
union all
select b.run_id, b.ranking_score, b.model, b.benchmark, b.mode, l.stage, l.ranking, b.k, b.fraction, b.accuracy, b.ci_low, b.ci_high, b.n_conditions
from shown as b
join lines as l using (run_id, mode)
where b.strategy = 'none'
order by model, benchmark, mode, stage, ranking, run_id, k
