-- The statistics every accuracy table of attnwh reports, each one DuckDB macro defined here and nowhere
-- else (masking_accuracy, pruning_accuracy). They do not enter the rollups, so they are not part of the
-- definitions' version.

-- 95% Wilson score interval of k successes in n trials: exactly 0 at k = 0 and 1 at k = n (where rounding left
-- it a few 1e-17 off), within [0, 1] always
create or replace macro wilson_low(k, n) as
    case when n > 0 and k <= 0 then 0.0 when n > 0 then greatest(0.0,
        (k / n + 1.959963984540054 ^ 2 / (2 * n) - 1.959963984540054 * sqrt((k / n) * (1 - k / n) / n + 1.959963984540054 ^ 2 / (4 * n * n)))
        / (1 + 1.959963984540054 ^ 2 / n))
    end;
create or replace macro wilson_high(k, n) as
    case when n > 0 and k >= n then 1.0 when n > 0 then least(1.0,
        (k / n + 1.959963984540054 ^ 2 / (2 * n) + 1.959963984540054 * sqrt((k / n) * (1 - k / n) / n + 1.959963984540054 ^ 2 / (4 * n * n)))
        / (1 + 1.959963984540054 ^ 2 / n))
    end;

-- the 97.5% quantile of Student's t with df degrees of freedom (a 95% two-sided interval), df rounded down (the
-- conservative Welch convention): tabulated to 30, then the Cornish-Fisher expansion (within 1e-5 from 30 on)
create or replace macro t_975(df) as
    case
        when df is null or df < 1 or isnan(df) then null
        when df < 31 then [
            12.706204736174698, 4.302652729749464, 3.182446305284263, 2.7764451051977934, 2.570581835636314,
            2.4469118511449692, 2.3646242515927844, 2.306004135204166, 2.2621571628540993, 2.2281388519649385,
            2.200985160082949, 2.1788128296634177, 2.1603686564610127, 2.1447866879169273, 2.131449545559323,
            2.1199052992210112, 2.1098155778331806, 2.100922040241036, 2.093024054408263, 2.0859634472658364,
            2.079613844727662, 2.0738730679040147, 2.0686576104190406, 2.0638985616280205, 2.059538552753294,
            2.055529438642871, 2.0518305164802833, 2.048407141795244, 2.045229642132703, 2.0422724563012373
        ][cast(floor(df) as integer)]
        else 1.959963984540054
            + (1.959963984540054 ^ 3 + 1.959963984540054) / (4 * floor(df))
            + (5 * 1.959963984540054 ^ 5 + 16 * 1.959963984540054 ^ 3 + 3 * 1.959963984540054) / (96 * floor(df) ^ 2)
            + (3 * 1.959963984540054 ^ 7 + 19 * 1.959963984540054 ^ 5 + 17 * 1.959963984540054 ^ 3 - 15 * 1.959963984540054) / (384 * floor(df) ^ 3)
    end;

-- exact two-sided McNemar p-value of a paired comparison: b and c are the discordant pairs (right in the
-- reference and wrong here, wrong in the reference and right here); binomial(b + c, 1/2)
create or replace macro mcnemar_p(b, c) as
    case
        when b + c = 0 then 1.0
        else least(1.0, 2 * (
            select sum(exp(lgamma(b + c + 1) - lgamma(i + 1) - lgamma(b + c - i + 1) - (b + c) * ln(2)))
            from (select unnest(range(0, least(b, c) + 1)) as i)
        ))
    end;

-- how a patterns attribution fit's intervals are drawn today (attribution_fits.interval, written by attnwh attribute):
-- stg_head_attributions hides the intervals of fits labelled otherwise (older constructions that under-covered)
create or replace macro patterns_interval() as 't over patterns and samples';

-- the fewest heads two rankings must both score for ranking_agreement's rank correlations (null below)
create or replace macro min_agreement_heads() as 5;
