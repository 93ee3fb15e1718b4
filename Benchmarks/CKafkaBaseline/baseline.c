#include "baseline.h"
int veil_baseline_placeholder(void){return 0;}
