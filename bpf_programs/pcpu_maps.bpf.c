/* Creates the maps every program module shares; it holds no program itself. */
#define PCPU_MAPS_OWNER
#include "pcpu_maps.h"
