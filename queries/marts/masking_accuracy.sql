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
    a.* exclude (run_id, model, benchmark, kind, condition_id, baseline, settings, ranking_run_id, ranking_score, image_kv_kept, kv_bytes, kv_bytes_full, kv_saving)
from stg_mask_conditions as m
join sweep_accuracy as a using (run_id, condition_id)
order by m.run_id, m.condition_id
