-- one row per run, sample, generated step and layer of the lens: the rank and probability of the token that
-- step generated, with normalised depth (0 = embeddings, 1 = the model's own logits)
select
    l.run_id,
    l.sample_idx,
    l.step,
    l.layer,
    r.n_decoder_layers as n_layers,  -- the lens's: decoder layers (a hybrid model's attention layers are fewer)
    l.layer / r.n_decoder_layers as depth,
    l.token_rank,
    l.token_prob,
    l.token_rank = 1 as at_top
from gen_lens as l
join stg_runs as r using (run_id)
