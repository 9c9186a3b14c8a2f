-- one row per pruning condition: accuracy with a 95% Wilson interval, the paired comparison with the
-- full cache (condition 0) on the same samples (difference, answer stability, exact McNemar p-value), and
-- the KV cache the pruned heads would hold against the full one
with results as (
    select *
    from stg_prune_results
    where status = 'ok' and correct is not null
),
per_condition as (
    select
        run_id, model, benchmark, condition_id, allocation, kv_share, keep, floor, seed, ranking_run_id, ranking_score,
        count(*) as n,
        count(*) filter (where correct) as n_correct,
        avg(kv_bytes) as kv_bytes,
        avg(kv_bytes_full) as kv_bytes_full,
        1 - sum(kv_bytes) / sum(kv_bytes_full) as kv_saving,
        sum(kv_keys - (kv_keys_full - kv_keys_full / n_prompt_keys * n_image_keys))
            / sum(kv_keys_full / n_prompt_keys * n_image_keys) as image_kv_kept
    from results
    group by all
),
paired as (
    select
        c.run_id,
        c.condition_id,
        count(*) as n_paired,
        count(*) filter (where c.parsed is distinct from f.parsed) as n_changed,
        count(*) filter (where f.correct and not c.correct) as correct_to_wrong,
        count(*) filter (where not f.correct and c.correct) as wrong_to_right,
        avg(c.option_logprobs[ascii(c.gold) - ascii('A') + 1] - f.option_logprobs[ascii(f.gold) - ascii('A') + 1])
            filter (where length(c.gold) = 1 and c.gold between 'A' and 'Z') as gold_logprob_shift
    from results as c
    join results as f on f.run_id = c.run_id and f.condition_id = 0 and f.sample_idx = c.sample_idx
    group by c.run_id, c.condition_id
)
select
    a.run_id,
    a.model,
    a.benchmark,
    a.condition_id,
    a.allocation,
    a.kv_share,
    a.keep,
    a.floor,
    a.seed,
    a.ranking_run_id,
    a.ranking_score,
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
from per_condition as a
left join paired as p using (run_id, condition_id)
