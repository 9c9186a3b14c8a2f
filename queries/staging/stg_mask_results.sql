-- one row per mask run, condition and sample, with the condition's settings
select
    m.run_id,
    r.model,
    r.benchmark,
    m.condition_id,
    c.strategy,
    c.stage,
    c.k,
    c.fraction,
    c.seed,
    m.mode,
    m.sample_idx,
    m.sample_key,
    m.status,
    m.gold,
    m.output_text,
    m.parsed,
    m.correct,
    m.option_logprobs
from mask_results as m
join mask_conditions as c using (run_id, condition_id)
join stg_runs as r using (run_id)
