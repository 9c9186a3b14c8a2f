-- Accuracy as heads are masked, each strategy's line starting at the unmasked baseline, for the report's curves (Figs. 12-13).
with curves as (
    select * from masking_curves
),
lines as (
    select distinct run_id, strategy, stage from curves where strategy <> 'none'
)
select c.model, c.benchmark, c.mode, c.strategy, c.stage, c.k, c.fraction, c.accuracy, c.ci_low, c.ci_high, c.n_conditions
from curves as c
where c.strategy <> 'none'
union all
select b.model, b.benchmark, b.mode, l.strategy, l.stage, b.k, b.fraction, b.accuracy, b.ci_low, b.ci_high, b.n_conditions
from curves as b
join lines as l using (run_id)
where b.strategy = 'none'
order by model, benchmark, stage, strategy, k
