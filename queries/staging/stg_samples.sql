-- one row per run and sample: the raw samples table with the run's model and benchmark
select
    s.run_id,
    r.model,
    r.benchmark,
    s.sample_idx,
    s.sample_key,
    s.status,
    s.error,
    s.prompt,
    s.question,
    s.hint,
    s.choices,
    s.category,
    s.group_key,
    s.gold,
    s.output_text,
    s.parser,
    s.parser_version,
    s.parsed,
    s.correct,
    s.option_logprobs,
    s.n_tokens,
    s.n_image,
    s.image_start,
    s.image_end,
    s.n_region
from samples as s
join stg_runs as r using (run_id)
