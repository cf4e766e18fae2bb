/* plaza: an async runtime for C with the locks to match.  The one header a
 * program includes. */
#ifndef PLAZA_H
#define PLAZA_H

#include "plaza/runtime.h"
#include "plaza/park.h"
#include "plaza/sync.h"
#include "plaza/async.h"
#include "plaza/io.h"
#include "plaza/signal.h"
#include "plaza/bufio.h"
#include "plaza/task.h"
#include "plaza/guard.h"
#include "plaza/select.h"
#include "plaza/advisor.h"

#endif
