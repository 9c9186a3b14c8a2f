-- Accuracy against the share of image KV kept, one line per phase, keep rule and allocation (random: the mean over
-- its seeds, the band the envelope of their intervals), each line starting at the full cache, for the report's pruning curves
with per_share as (
    select model, benchmark, phase, keep, allocation, kv_share,
           avg(accuracy) as accuracy, min(ci_low) as ci_low, max(ci_high) as ci_high,
           avg(kv_saving) as kv_saving, count(*) as n_conditions
    from pruning_accuracy
    where allocation <> 'full'
    group by all
),
lines as (
    select distinct p.model, p.benchmark, p.phase, p.keep, p.allocation, a.run_id
    from per_share as p
    join pruning_accuracy as a
      on a.model = p.model and a.benchmark = p.benchmark and a.phase = p.phase and a.keep = p.keep and a.allocation = p.allocation
)
select model, benchmark, phase, keep, allocation, kv_share, accuracy, ci_low, ci_high, kv_saving, n_conditions
from per_share
union all
select distinct l.model, l.benchmark, l.phase, l.keep, l.allocation, f.kv_share, f.accuracy, f.ci_low, f.ci_high, f.kv_saving, 1 as n_conditions
from lines as l
join pruning_accuracy as f on f.run_id = l.run_id and f.allocation = 'full'
order by model, benchmark, phase, keep, allocation, kv_share
