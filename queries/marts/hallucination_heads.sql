-- one row per run, layer and head of the every-step capture: the head's attention ($score, image attention by
-- default) at the first token of object words that name an object in the image (grounded) against object words
-- that name one not in it (hallucinated, by the benchmark's annotation), compared at the same steps of the answer
-- and with a sample as the unit. Hallucinated words come later in an answer than grounded ones, and image attention
-- falls with the step for every word, so the kinds are compared within each step bucket (0, 1, 2-3, 4-7, ...) and,
-- within it, adjusted for the step (an analysis of covariance per bucket: the samples' mean values of each kind
-- against their mean steps, one slope for both kinds; a word an answer repeats in a bucket is one sample's evidence);
-- the buckets' adjusted differences are averaged with the hallucinated samples' weights (grounded words at the
-- hallucinated words' steps). A bucket is compared where both kinds have at least two samples and one degree of
-- freedom is left; the hallucinated words of the others are counted as left out, and a head with no such bucket has
-- no row. Both means, their difference with a 95% interval (Student's t at the Satterthwaite degrees of freedom of
-- the weighted sum, rounded down), its t and a standardised effect size, and the head's place among the run's heads
-- by how well it separates the two (|t|).
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
        total_step / n as mean_step,
        greatest(total_step_sq - total_step * total_step / n, 0) as sxx,
        total_step_value - total_step * total / n as sxy,
        greatest(total_sq - total * total / n, 0) as syy
    from stg_gen_head_scores
    where score = $score and n > 0
),
paired as (
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
        g.mean_step as step_grounded,
        h.mean_step as step_hallucinated,
        g.sxx + h.sxx as sxx,
        g.sxy + h.sxy as sxy,
        g.syy + h.syy as syy
    from units as g
    join units as h on h.run_id = g.run_id and h.layer = g.layer and h.head = g.head and h.step_bucket = g.step_bucket and h.token_kind = 'hallucinated'
    where g.token_kind = 'grounded' and g.n >= 2 and h.n >= 2
),
sloped as (
    select
        *,
        case when sxx > 0 then sxy / sxx else 0 end as slope,  -- the value's change per step within the kinds
        samples_grounded + samples_hallucinated - (case when sxx > 0 then 3 else 2 end) as df
    from paired
),
buckets as (
    select
        *,
        mean_grounded + slope * (step_hallucinated - step_grounded) as adjusted_grounded,  -- at the hallucinated words' steps
        greatest(syy - slope * sxy, 0) / df as residual_var,
        greatest(syy - slope * sxy, 0) / df * (
            1 / samples_grounded + 1 / samples_hallucinated + case when sxx > 0 then (step_grounded - step_hallucinated) ^ 2 / sxx else 0 end
        ) as var_difference
    from sloped
    where df >= 1
),
combined as (
    select
        run_id,
        layer,
        head,
        count(*) as n_buckets,
        cast(sum(tokens_grounded) as bigint) as n_grounded,
        cast(sum(tokens_hallucinated) as bigint) as n_hallucinated,
        sum(w * adjusted_grounded) as mean_grounded,
        sum(w * mean_hallucinated) as mean_hallucinated,
        sum(w * step_grounded) as step_grounded,
        sum(w * step_hallucinated) as step_hallucinated,
        sum(w * w * var_difference) as se2,
        sum((w * w * var_difference) ^ 2 / df) as df_denominator,
        sum(w * residual_var) as residual_var
    from (select *, samples_hallucinated / sum(samples_hallucinated) over (partition by run_id, layer, head) as w from buckets) as b
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
    c.step_grounded,
    c.step_hallucinated,
    c.mean_grounded,
    c.mean_hallucinated,
    c.difference,
    c.welch_df,
    c.difference - t_975(c.welch_df) * c.se as ci_low,
    c.difference + t_975(c.welch_df) * c.se as ci_high,
    case when c.se > 0 then c.difference / c.se end as welch_t,
    case when c.residual_var > 0 then c.difference / sqrt(c.residual_var) end as effect_size,
    row_number() over (partition by c.run_id order by abs(coalesce(c.difference / nullif(c.se, 0), 0)) desc, c.layer, c.head) as separation_rank
from compared as c
join stg_runs as r using (run_id)
join stg_layers as l using (run_id, layer)
order by c.run_id, separation_rank
