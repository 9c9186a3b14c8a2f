-- Accuracy as heads are masked, each strategy's line starting at the unmasked baseline, for the report's curves
-- (Figs. 12-13: heads ranked by an attention score); per model, benchmark and mode one mask run ranked by attention
-- (not by an attribution run or an imported ranking: report_causal_masking sets those beside it), the first by
-- shown_order (stg_runs) with that mode.
with by_attention as (
    select run_id, ranking_score
    from stg_mask_rankings
    where ranking_score not in ('attribution', 'imported')
),
curves as (
    select c.*, a.ranking_score
    from masking_curves as c
    join by_attention as a using (run_id)
    join stg_runs as r using (run_id)
    qualify r.shown_order = min(r.shown_order) over (partition by c.model, c.benchmark, c.mode)
),
lines as (
    select distinct run_id, strategy, stage from curves where strategy <> 'none'
)
select c.run_id, c.ranking_score, c.model, c.benchmark, c.mode, c.strategy, c.stage, c.k, c.fraction, c.accuracy, c.ci_low, c.ci_high, c.n_conditions
from curves as c
where c.strategy <> 'none'
union all
select b.run_id, b.ranking_score, b.model, b.benchmark, b.mode, l.strategy, l.stage, b.k, b.fraction, b.accuracy, b.ci_low, b.ci_high, b.n_conditions
from curves as b
join lines as l using (run_id)
where b.strategy = 'none'
order by model, benchmark, stage, strategy, k
