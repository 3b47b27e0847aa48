with posts as (
    select * from {{ source('warehouse', 'psychgenerator_posts') }}
),

long_format as (
    select post_id, 1 as trait_ordinal, 'openness' as trait, openness as z_score,
           openness_level as level, openness_split as split, text
    from posts
    union all
    select post_id, 2, 'conscientiousness', conscientiousness,
           conscientiousness_level, conscientiousness_split, text
    from posts
    union all
    select post_id, 3, 'extraversion', extraversion,
           extraversion_level, extraversion_split, text
    from posts
    union all
    select post_id, 4, 'agreeableness', agreeableness,
           agreeableness_level, agreeableness_split, text
    from posts
    union all
    select post_id, 5, 'neuroticism', neuroticism,
           neuroticism_level, neuroticism_split, text
    from posts
)

select
    post_id,
    trait_ordinal,
    trait,
    z_score,
    level,
    split,
    text,
    case
        when trim(text) = '' then 0
        else len(regexp_split_to_array(trim(text), '\s+'))
    end as n_words,
    length(text) as n_chars
from long_format
