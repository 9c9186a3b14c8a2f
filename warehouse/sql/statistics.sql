-- The statistics every accuracy table of attnwh reports, each one DuckDB macro defined here and nowhere
-- else (masking_accuracy, pruning_accuracy). They do not enter the rollups, so they are not part of the
-- definitions' version.

-- 95% Wilson score interval of k successes in n trials
create or replace macro wilson_low(k, n) as
    case when n > 0 then
        (k / n + 1.959963984540054 ^ 2 / (2 * n) - 1.959963984540054 * sqrt((k / n) * (1 - k / n) / n + 1.959963984540054 ^ 2 / (4 * n * n)))
        / (1 + 1.959963984540054 ^ 2 / n)
    end;
create or replace macro wilson_high(k, n) as
    case when n > 0 then
        (k / n + 1.959963984540054 ^ 2 / (2 * n) + 1.959963984540054 * sqrt((k / n) * (1 - k / n) / n + 1.959963984540054 ^ 2 / (4 * n * n)))
        / (1 + 1.959963984540054 ^ 2 / n)
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
