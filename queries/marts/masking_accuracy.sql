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
    select *, mcnemar_p(correct_to_wrong, wrong_to_right) as mcnemar_p
    from paired
),
wilson as (
    select *, n_correct / n as accuracy
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
    wilson_low(w.n_correct, w.n) as ci_low,
    wilson_high(w.n_correct, w.n) as ci_high,
    (t.wrong_to_right - t.correct_to_wrong) / t.n_paired as delta,
    t.n_changed / t.n_paired as changed,
    t.correct_to_wrong,
    t.wrong_to_right,
    t.gold_logprob_shift,
    t.mcnemar_p
from stg_mask_conditions as m
join wilson as w using (run_id, condition_id)
left join tests as t using (run_id, condition_id)
