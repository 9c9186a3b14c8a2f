-- Accuracy as heads are masked, each strategy's line starting at the unmasked baseline, for the report's curves
-- (Figs. 12-13); per model, benchmark and mode one mask run, the first by shown_order (stg_runs) with that mode.
with curves as (
    select c.*
    from masking_curves as c
    join stg_runs as r using (run_id)
    qualify r.shown_order = min(r.shown_order) over (partition by c.model, c.benchmark, c.mode)
),
lines as (
    select distinct run_id, strategy, stage from curves where strategy <> 'none'
)
select c.run_id, c.model, c.benchmark, c.mode, c.strategy, c.stage, c.k, c.fraction, c.accuracy, c.ci_low, c.ci_high, c.n_conditions
from curves as c
where c.strategy <> 'none'
union all
select b.run_id, b.model, b.benchmark, b.mode, l.strategy, l.stage, b.k, b.fraction, b.accuracy, b.ci_low, b.ci_high, b.n_conditions
from curves as b
join lines as l using (run_id)
where b.strategy = 'none'
order by model, benchmark, stage, strategy, k
