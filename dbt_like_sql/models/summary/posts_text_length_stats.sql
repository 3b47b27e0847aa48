select
    trait_ordinal,
    trait,
    level,
    count(*) as n_posts,
    avg(n_words) as mean_words,
    median(n_words) as median_words,
    min(n_words) as min_words,
    max(n_words) as max_words,
    avg(n_chars) as mean_chars,
    median(n_chars) as median_chars,
    min(n_chars) as min_chars,
    max(n_chars) as max_chars
from {{ ref('stg_psychgenerator_posts') }}
where level is not null
group by trait_ordinal, trait, level
order by trait_ordinal, level
