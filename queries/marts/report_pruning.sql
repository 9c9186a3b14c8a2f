-- Accuracy against the share of image KV kept, one line per phase, keep rule and allocation (random: the mean over
-- its seeds, the band the envelope of their intervals), each line starting at the full cache, for the report's pruning curves;
-- changed_most: the largest share of answers a condition of the point changed against the full cache (0: the point
-- changed no answer, as a cache-phase pruning cannot where answers are decided at their first token)
-- (per model, benchmark and phase one prune run, the first by shown_order in stg_runs with that phase)
with chosen as (
    select a.run_id, a.phase
    from (select distinct run_id, model, benchmark, phase from pruning_accuracy where allocation <> 'full') as a
    join stg_runs as r using (run_id)
    qualify r.shown_order = min(r.shown_order) over (partition by a.model, a.benchmark, a.phase)
),
shown as (
    select a.*
    from pruning_accuracy as a
    join chosen using (run_id, phase)
),
per_share as (
    select run_id, model, benchmark, phase, keep, allocation, kv_share,
           avg(accuracy) as accuracy, min(ci_low) as ci_low, max(ci_high) as ci_high,
           avg(kv_saving) as kv_saving, max(changed) as changed_most, count(*) as n_conditions
    from shown
    where allocation <> 'full'
    group by all
),
lines as (
    select distinct run_id, model, benchmark, phase, keep, allocation
    from per_share
)
select run_id, model, benchmark, phase, keep, allocation, kv_share, accuracy, ci_low, ci_high, kv_saving, changed_most, n_conditions
from per_share
union all
select l.run_id, l.model, l.benchmark, l.phase, l.keep, l.allocation, f.kv_share, f.accuracy, f.ci_low, f.ci_high, f.kv_saving, 0 as changed_most, 1 as n_conditions
from lines as l
join pruning_accuracy as f on f.run_id = l.run_id and f.allocation = 'full'
order by model, benchmark, phase, keep, allocation, kv_share
