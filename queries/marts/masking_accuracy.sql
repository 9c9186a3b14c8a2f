-- one row per masking condition: accuracy with a 95% Wilson interval, and the paired comparison with the
-- unmasked baseline (condition 0) on the same samples: difference in accuracy, answer stability (answers
-- changed, correct -> wrong, wrong -> right, shift of the gold option's log-probability) and the exact McNemar p-value
with results as (
    select run_id, condition_id, sample_idx, correct, parsed, gold, option_logprobs
    from stg_mask_results
    where status = 'ok' and correct is not null
),
per_condition as (
    select run_id, condition_id, count(*) as n, count(*) filter (where correct) as n_correct
    from results
    group by run_id, condition_id
),
-- answer stability against the baseline on the samples both scored; the gold option's log-probability
-- is the option_logprobs entry of the gold letter (multiple choice only: null for yes / no answers)
paired as (
    select
        c.run_id,
        c.condition_id,
        count(*) as n_paired,
        count(*) filter (where c.parsed is distinct from b.parsed) as n_changed,
        count(*) filter (where b.correct and not c.correct) as correct_to_wrong,
        count(*) filter (where not b.correct and c.correct) as wrong_to_right,
        avg(c.option_logprobs[ascii(c.gold) - ascii('A') + 1] - b.option_logprobs[ascii(b.gold) - ascii('A') + 1])
            filter (where length(c.gold) = 1 and c.gold between 'A' and 'Z') as gold_logprob_shift
    from results as c
    join results as b on b.run_id = c.run_id and b.condition_id = 0 and b.sample_idx = c.sample_idx
    group by c.run_id, c.condition_id
),
tests as (
    select
        *,
        case
            when correct_to_wrong + wrong_to_right = 0 then 1.0
            else least(1.0, 2 * (
                select sum(exp(lgamma(correct_to_wrong + wrong_to_right + 1) - lgamma(i + 1) - lgamma(correct_to_wrong + wrong_to_right - i + 1)
                               - (correct_to_wrong + wrong_to_right) * ln(2)))
                from (select unnest(range(0, least(correct_to_wrong, wrong_to_right) + 1)) as i)
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
    (t.wrong_to_right - t.correct_to_wrong) / t.n_paired as delta,
    t.n_changed / t.n_paired as changed,
    t.correct_to_wrong,
    t.wrong_to_right,
    t.gold_logprob_shift,
    t.mcnemar_p
from stg_mask_conditions as m
join wilson as w using (run_id, condition_id)
left join tests as t using (run_id, condition_id)
