-- one row per run, sample, generated step and layer of the lens: the rank and probability of the token that
-- step generated, with normalised depth (0 = embeddings, 1 = the model's own logits)
select
    l.run_id,
    l.sample_idx,
    l.step,
    l.layer,
    r.n_layers,
    l.layer / r.n_layers as depth,
    l.token_rank,
    l.token_prob,
    l.token_rank = 1 as at_top
from gen_lens as l
join stg_runs as r using (run_id)
