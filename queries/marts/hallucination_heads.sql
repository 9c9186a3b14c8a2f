-- one row per run, layer and head of the every-step capture: the head's attention ($score, image attention by
-- default) at the first token of object words that name an object in the image (grounded) against object words
-- that name one not in it (hallucinated, by the benchmark's annotation), compared at the same steps of the answer
-- and with a sample as the unit. Hallucinated words come later in an answer than grounded ones, and image attention
-- falls with the step for every word, so the kinds are compared within each step bucket (0, 1, 2-3, 4-7, ...): per
-- bucket, the samples' means of each kind (a word an answer repeats in a bucket is one sample's evidence), their
-- difference, and the buckets' differences averaged with the hallucinated samples' weights (grounded words at the
-- hallucinated words' steps). A bucket is compared where both kinds have at least two samples; the hallucinated words
-- of the others are counted as left out, and a head with no such bucket has no row. Both means, their difference with
-- a 95% Welch interval (Student's t at the Welch-Satterthwaite degrees of freedom of the weighted sum, rounded down:
-- with few samples, several times wider than ± 1.96 standard errors), the Welch t and a standardised effect size, and
-- the head's place among the run's heads by how well it separates the two (|t|).
with units as (
    select
        run_id,
        layer,
        head,
        step_bucket,
        token_kind,
        n,
        n_tokens,
        total / n as mean,
        case when n > 1 then greatest(total_sq - total * total / n, 0) / (n - 1) end as variance
    from stg_gen_head_scores
    where score = $score and n > 0
),
buckets as (
    select
        g.run_id,
        g.layer,
        g.head,
        g.step_bucket,
        g.n as samples_grounded,
        h.n as samples_hallucinated,
        g.n_tokens as tokens_grounded,
        h.n_tokens as tokens_hallucinated,
        g.mean as mean_grounded,
        h.mean as mean_hallucinated,
        g.variance as var_grounded,
        h.variance as var_hallucinated
    from units as g
    join units as h on h.run_id = g.run_id and h.layer = g.layer and h.head = g.head and h.step_bucket = g.step_bucket and h.token_kind = 'hallucinated'
    where g.token_kind = 'grounded' and g.n >= 2 and h.n >= 2
),
weighted as (
    select
        *,
        samples_hallucinated / sum(samples_hallucinated) over (partition by run_id, layer, head) as w,
        var_grounded / samples_grounded as se2_grounded,
        var_hallucinated / samples_hallucinated as se2_hallucinated
    from buckets
),
combined as (
    select
        run_id,
        layer,
        head,
        count(*) as n_buckets,
        cast(sum(tokens_grounded) as bigint) as n_grounded,
        cast(sum(tokens_hallucinated) as bigint) as n_hallucinated,
        sum(w * mean_grounded) as mean_grounded,
        sum(w * mean_hallucinated) as mean_hallucinated,
        sum(w * w * (se2_grounded + se2_hallucinated)) as se2,
        sum((w * w * se2_grounded) ^ 2 / (samples_grounded - 1) + (w * w * se2_hallucinated) ^ 2 / (samples_hallucinated - 1)) as df_denominator,
        sum(w * (var_grounded + var_hallucinated) / 2) as pooled_variance
    from weighted
    group by run_id, layer, head
),
hallucinated_words as (
    select run_id, layer, head, cast(sum(n_tokens) as bigint) as n_words
    from units
    where token_kind = 'hallucinated'
    group by run_id, layer, head
),
compared as (
    select
        c.*,
        w.n_words - c.n_hallucinated as n_hallucinated_left_out,
        c.mean_grounded - c.mean_hallucinated as difference,
        sqrt(c.se2) as se,
        case when c.se2 > 0 then c.se2 ^ 2 / c.df_denominator end as welch_df
    from combined as c
    join hallucinated_words as w using (run_id, layer, head)
)
select
    c.run_id,
    r.model,
    r.benchmark,
    c.layer,
    c.head,
    l.stage,
    c.n_grounded,
    c.n_hallucinated,
    c.n_hallucinated_left_out,
    c.n_buckets,
    c.mean_grounded,
    c.mean_hallucinated,
    c.difference,
    c.welch_df,
    c.difference - t_975(c.welch_df) * c.se as ci_low,
    c.difference + t_975(c.welch_df) * c.se as ci_high,
    case when c.se > 0 then c.difference / c.se end as welch_t,
    case when c.pooled_variance > 0 then c.difference / sqrt(c.pooled_variance) end as effect_size,
    row_number() over (partition by c.run_id order by abs(coalesce(c.difference / nullif(c.se, 0), 0)) desc, c.layer, c.head) as separation_rank
from compared as c
join stg_runs as r using (run_id)
join stg_layers as l using (run_id, layer)
order by c.run_id, separation_rank
