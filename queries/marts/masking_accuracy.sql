-- one row per masking condition: sweep_accuracy (accuracy with a 95% Wilson interval, and the paired comparison
-- with the unmasked baseline on the same samples) with the masking settings as columns
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
    a.n,
    a.n_correct,
    a.accuracy,
    a.ci_low,
    a.ci_high,
    a.delta,
    a.changed,
    a.correct_to_wrong,
    a.wrong_to_right,
    a.gold_logprob_shift,
    a.mcnemar_p
from stg_mask_conditions as m
join sweep_accuracy as a using (run_id, condition_id)
