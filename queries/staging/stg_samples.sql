-- one row per run and sample: the raw samples table with the run's model and benchmark
select
    s.run_id,
    r.model,
    r.benchmark,
    s.sample_idx,
    s.sample_key,
    s.status,
    s.error,
    s.question,
    s.category,
    s.gold,
    s.output_text,
    s.parsed,
    s.correct,
    s.n_tokens,
    s.n_image,
    s.image_start,
    s.image_end
from samples as s
join runs as r using (run_id)
