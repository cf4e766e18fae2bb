/* plaza: an async runtime for C with the locks to match.  The one header a
 * program includes. */
#ifndef PLAZA_H
#define PLAZA_H

#include "plaza/runtime.h"

#endif
