-- one row per run and kind of generated word: from which layer the lens keeps the word's first token top-1 (the
-- first layer after the last one where it was not), per word, summarised: do hallucinated object words settle
-- later than grounded ones? Kinds: grounded / hallucinated object words, and every other word ('other').
-- Steps whose token is not the lens's final top-1 (a logits processor chose another) have no lens rows.
with per_token as (
    select
        run_id,
        sample_idx,
        step,
        any_value(n_layers) as n_layers,
        coalesce(max(layer) filter (where not at_top) + 1, 0) as settle_layer
    from stg_gen_lens
    group by run_id, sample_idx, step
)
select
    t.run_id,
    t.model,
    t.benchmark,
    t.token_kind,
    any_value(p.n_layers) as n_layers,
    count(*) as n_words,
    median(p.settle_layer) as median_settle_layer,
    quantile_cont(p.settle_layer, 0.25) as q1_settle_layer,
    quantile_cont(p.settle_layer, 0.75) as q3_settle_layer,
    avg(p.settle_layer / p.n_layers) as mean_settle_depth,
    avg(case when p.settle_layer < p.n_layers then 1.0 else 0.0 end) as share_settled_early
from per_token as p
join stg_gen_tokens as t using (run_id, sample_idx, step)
where t.word_start
group by t.run_id, t.model, t.benchmark, t.token_kind
order by t.run_id, t.token_kind
