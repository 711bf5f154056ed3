typedef int tly_topics_placeholder;
