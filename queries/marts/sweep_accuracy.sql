-- one row per sweep condition (masking, pruning, any intervention): accuracy with a 95% Wilson interval, the
-- paired comparison with the run's baseline (condition 0) on the same samples (difference in accuracy, answer
-- stability: answers changed, correct -> wrong, wrong -> right, shift of the gold option's log-probability;
-- the exact McNemar p-value), and the KV cache the condition leaves against the full one. The one definition
-- of a sweep's comparison: masking_accuracy and pruning_accuracy add their kind's typed settings to it.
with results as (
    select *
    from stg_sweep_results
    where status = 'ok' and correct is not null
),
per_condition as (
    select
        run_id,
        condition_id,
        count(*) as n,
        count(*) filter (where correct) as n_correct,
        avg(kv_bytes) as kv_bytes,
        avg(kv_bytes_full) as kv_bytes_full,
        1 - sum(kv_bytes) / sum(kv_bytes_full) as kv_saving,
        sum(kv_keys - (kv_keys_full - kv_keys_full / n_prompt_keys * n_image_keys))
            / sum(kv_keys_full / n_prompt_keys * n_image_keys) as image_kv_kept
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
final as (
    select
        s.run_id,
        s.model,
        s.benchmark,
        s.kind,
        s.condition_id,
        s.baseline,
        s.settings,
        s.ranking_run_id,
        s.ranking_score,
        a.n,
        a.n_correct,
        a.n_correct / a.n as accuracy,
        wilson_low(a.n_correct, a.n) as ci_low,
        wilson_high(a.n_correct, a.n) as ci_high,
        (p.wrong_to_right - p.correct_to_wrong) / p.n_paired as delta,
        p.n_changed / p.n_paired as changed,
        p.correct_to_wrong,
        p.wrong_to_right,
        p.gold_logprob_shift,
        mcnemar_p(p.correct_to_wrong, p.wrong_to_right) as mcnemar_p,
        a.image_kv_kept,
        a.kv_bytes,
        a.kv_bytes_full,
        a.kv_saving
    from stg_sweep_conditions as s
    join per_condition as a using (run_id, condition_id)
    left join paired as p using (run_id, condition_id)
)
select * from final
order by run_id, condition_id
