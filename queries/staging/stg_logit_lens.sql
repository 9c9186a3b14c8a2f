-- one row per run, sample, query and layer of the logit lens, with normalised depth
select
    l.run_id,
    r.model,
    r.benchmark,
    l.sample_idx,
    l.query,
    l.layer,
    r.n_decoder_layers as n_layers,  -- the lens's: decoder layers (a hybrid model's attention layers are fewer)
    l.layer / r.n_decoder_layers as depth,  -- 0 = embeddings, 1 = the model's own logits
    l.target_token,
    l.target_text,
    l.target_rank,
    l.target_prob,
    l.top_token,
    l.top_text,
    l.top_prob,
    l.target_rank = 1 as at_top
from logit_lens as l
join stg_runs as r using (run_id)
