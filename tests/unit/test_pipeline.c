#include "tly_test.h"
int main(void){ CHECK(1); end: return tly_test_finish(); }
