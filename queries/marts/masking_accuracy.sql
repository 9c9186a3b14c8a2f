-- one row per masking condition: accuracy with a 95% Wilson interval, and the paired comparison with the
-- unmasked baseline (condition 0) on the same samples: difference in accuracy and the exact McNemar p-value
with results as (
    select run_id, condition_id, sample_idx, correct
    from stg_mask_results
    where status = 'ok' and correct is not null
),
per_condition as (
    select run_id, condition_id, count(*) as n, count(*) filter (where correct) as n_correct
    from results
    group by run_id, condition_id
),
paired as (
    select
        c.run_id,
        c.condition_id,
        count(*) as n_paired,
        count(*) filter (where b.correct and not c.correct) as lost,
        count(*) filter (where not b.correct and c.correct) as gained
    from results as c
    join results as b on b.run_id = c.run_id and b.condition_id = 0 and b.sample_idx = c.sample_idx
    group by c.run_id, c.condition_id
),
tests as (
    select
        run_id,
        condition_id,
        n_paired,
        lost,
        gained,
        case
            when lost + gained = 0 then 1.0
            else least(1.0, 2 * (
                select sum(exp(lgamma(lost + gained + 1) - lgamma(i + 1) - lgamma(lost + gained - i + 1) - (lost + gained) * ln(2)))
                from (select unnest(range(0, least(lost, gained) + 1)) as i)
            ))
        end as mcnemar_p
    from paired
),
wilson as (
    select
        *,
        n_correct / n as accuracy,
        1.959963984540054 as z
    from per_condition
)
select
    m.run_id,
    m.model,
    m.benchmark,
    m.condition_id,
    m.strategy,
    m.stage,
    m.k,
    m.fraction,
    m.seed,
    m.mode,
    w.n,
    w.n_correct,
    w.accuracy,
    (w.accuracy + w.z * w.z / (2 * w.n) - w.z * sqrt(w.accuracy * (1 - w.accuracy) / w.n + w.z * w.z / (4 * w.n * w.n)))
        / (1 + w.z * w.z / w.n) as ci_low,
    (w.accuracy + w.z * w.z / (2 * w.n) + w.z * sqrt(w.accuracy * (1 - w.accuracy) / w.n + w.z * w.z / (4 * w.n * w.n)))
        / (1 + w.z * w.z / w.n) as ci_high,
    (t.gained - t.lost) / t.n_paired as delta,
    t.lost,
    t.gained,
    t.mcnemar_p
from stg_mask_conditions as m
join wilson as w using (run_id, condition_id)
left join tests as t using (run_id, condition_id)
