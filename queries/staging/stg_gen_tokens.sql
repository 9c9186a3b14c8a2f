-- one row per run, sample and generated step: the token, the word of the answer it belongs to, the object the
-- word names and whether it is in the image, with the run's model and benchmark and the token's kind
-- (token_kind: the first token of a grounded or hallucinated object word, else 'other')
select
    t.run_id,
    r.model,
    r.benchmark,
    t.sample_idx,
    t.step,
    step_bucket(t.step) as step_bucket,
    t.token_id,
    t.token_text,
    t.eos,
    t.word_index,
    t.word,
    t.word_start,
    t.object,
    t.object_status,
    token_kind(t.word_start, t.object_status) as token_kind
from gen_tokens as t
join stg_runs as r using (run_id)
